"""Command-line plumbing shared by train.py and unlearn.py (LightningCLI subclasses, loggers)."""
