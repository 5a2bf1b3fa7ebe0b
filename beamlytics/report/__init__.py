"""What an analyst reads: incidents, evidence in words, the HTML report. No Beam."""
