"""The live collector (issue 10): placeholder docstring, replaced below."""
