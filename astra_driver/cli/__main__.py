"""`python -m astra_driver.cli`: the `pipesim` command without the console script."""

from astra_driver.cli import run

if __name__ == "__main__":
    run()
