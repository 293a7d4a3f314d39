"""The `qtf-edge` command: a click group, one small module per command."""
