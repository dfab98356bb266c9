"""The Label tab: its view, the browser polygon editor and the image gallery, over `app.core.datasets`."""
