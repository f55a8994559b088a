"""The weekly report: numbers from the archive with Dask, charts, HTML/JSON/CSV."""
