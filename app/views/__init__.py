"""The Gradio tabs: each view builds its tab on `app.core` and never imports another view; `app.blocks` puts
them together."""
