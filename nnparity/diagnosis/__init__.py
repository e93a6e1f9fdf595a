"""Step parity of a network and the first divergence, a layer's parity, finite differences, metamorphic relations."""
