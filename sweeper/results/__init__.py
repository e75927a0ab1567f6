"""What a sweep leaves: results file, locating a study, status, choosing and promoting a trial."""
