"""Training in the background: the Train form's checks (`form`), jobs as supervised processes with their queue on
disk (`manager`, `supervisor`), what a run shows while it trains (`monitor`), and the service tying them to the
datasets and the runs folder (`service`)."""
