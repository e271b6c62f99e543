"""The training loop, its state, the strategy (phases, param groups), objective and schedule."""
