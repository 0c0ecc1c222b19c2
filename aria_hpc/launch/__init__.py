"""submitit launching: training(+evaluation) members of sweeps and of the demo."""
