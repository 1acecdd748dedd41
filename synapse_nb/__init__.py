"""synapse-nb: notebook-first clustering of 3-D synapse morphology from volume EM."""
__version__ = "0.1.0"
