"""The ``batchapp`` command: submit, watch and steer jobs; start a local demo."""
