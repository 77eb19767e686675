"""The pipeline built from the step interfaces: `interfaces` reads step.yaml and MLproject, `graph` makes
the DAG, `plan` turns it and the user's flags into runs, `cache` decides what is reused, `runner`
runs it; `figure` draws it, `scaffold` and `export` make and ship steps."""
