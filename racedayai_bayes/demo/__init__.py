"""The synthetic world of demo data: apart from the pipeline, which never imports it."""
