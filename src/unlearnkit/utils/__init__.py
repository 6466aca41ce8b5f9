"""Small helpers shared across unlearnkit: model handling, hashing, checkpoints, seeding."""
