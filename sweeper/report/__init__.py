"""How a sweep is shown: the live table while it runs, the HTML report after."""
