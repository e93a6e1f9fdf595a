"""The catalogue of deliberate slips and the kill matrix of the checks."""
