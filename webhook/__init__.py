"""mesh-injector: a mutating admission webhook that meshes pods at creation time."""

__version__ = "0.1.0"
