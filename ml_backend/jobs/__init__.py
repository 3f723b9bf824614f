"""Training jobs: the RQ queue, the job itself, pushing a version's predictions, versions and the model card."""
