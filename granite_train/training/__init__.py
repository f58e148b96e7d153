"""Training: Lightning modules, schedules, callbacks and the Hydra-driven entry point."""
