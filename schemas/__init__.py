"""The curated schema of the raw examples (`schema.pbtxt`), shipped inside the installed package
so an editable install, a regular wheel and the container image all find it the same way."""
import importlib.resources

SCHEMA_FILE = str(importlib.resources.files(__name__).joinpath("schema.pbtxt"))
