"""The data marts: what went into the production model, what came out, and drift, per batch.

`tables` declares them and opens engines, `writers` writes one batch in one transaction (`helper`
does it in a second process for big batches), `queries` reads them for the dashboard and the report.
"""
