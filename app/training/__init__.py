"""The Train tab: its view over `app.core.jobs`."""
