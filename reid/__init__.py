"""The ``reid`` command: wires the trainer, the service and the workers together."""
