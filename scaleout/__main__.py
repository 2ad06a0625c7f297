from scaleout.lab.cli import app

app()
