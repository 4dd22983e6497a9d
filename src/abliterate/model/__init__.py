"""Loading models and understanding their layout."""
