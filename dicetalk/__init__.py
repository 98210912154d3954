"""dicetalk: open training framework for DICE-Talk."""
__version__ = "0.1.0"
