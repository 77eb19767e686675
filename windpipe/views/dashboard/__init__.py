"""The Dash dashboard that serves the production model: `app.create_app`, served by `serve`.

The frames and figures it shows live in windpipe.views (no Dash there), shared with the report.
"""
