"""What every step needs: the validated params (config, sections, paths, architectures), atomic file I/O, logging."""
