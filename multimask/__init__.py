"""MultiMask: Mask R-CNN with several named masks per instance, as a detectron2 extension."""

import warnings

# detectron2 0.6/0.7 scripts a few helpers with torch.jit at import; torch >= 2.10 warns about that on
# every start. Nothing a user can act on, so it is silenced here, for that message only.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)

from .config import add_multimask_config, get_multimask_cfg, validate_multimask_config  # noqa: E402
from .modeling import MultiMaskRCNN, MultiMaskRCNNConvUpsampleHead, MultiMaskROIHeads  # noqa: E402
from .structures import MultiMasks  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MultiMaskRCNN",
    "MultiMaskRCNNConvUpsampleHead",
    "MultiMaskROIHeads",
    "MultiMasks",
    "add_multimask_config",
    "get_multimask_cfg",
    "validate_multimask_config",
]
