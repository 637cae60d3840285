"""``sfn-worker once``: the one task a container was started for (ECS runTask)."""
