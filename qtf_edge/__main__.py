"""`python -m qtf_edge ...` runs the `qtf-edge` command; torchrun runs it the same way:

    torchrun --nproc_per_node 2 -m qtf_edge train --preset small --out runs/small-qtf
"""

from qtf_edge.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="qtf-edge")
