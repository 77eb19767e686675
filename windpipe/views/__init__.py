"""What people look at: frames and figures shared by the dashboard and the weekly report."""
