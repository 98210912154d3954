"""Raw MEAD / HDTF -> training store."""
