from scaleout.cli import app

app()
