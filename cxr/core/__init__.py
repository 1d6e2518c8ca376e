"""What every step needs: the validated params (config, sections, paths, architectures) and atomic file I/O."""
