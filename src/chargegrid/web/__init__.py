"""The operator dashboard and browser assets served by the app."""
