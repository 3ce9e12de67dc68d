"""RECC's command line (``recc``): a thin typer shell over the library. Ships as recc.cli."""
