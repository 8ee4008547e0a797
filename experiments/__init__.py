"""Experiment binaries (absl): run one as `python -m experiments.<name> --help`."""
