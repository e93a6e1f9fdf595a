"""The user API (check_layer, check_loss, check_steps) and the pytest fixture."""
