"""`dsv4-tune report`: what a sweep found (or what policies hold), as PNGs and one HTML page."""
