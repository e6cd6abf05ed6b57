"""Looking at a finished selection: diagnostics, comparisons and the HTML report."""
