"""The app's core, without Gradio: datasets (the Label store), models (runs and their predictors) and jobs
(training in the background). The views in `app.views` build the tabs on it; nothing here imports a view."""
