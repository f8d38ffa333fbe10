"""Disks: the GPT layout (pyparted), boot-control on the state partition, flash, provision."""
