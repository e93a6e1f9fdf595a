"""One module per documented network: its recipe, its layers, its initialisation."""
