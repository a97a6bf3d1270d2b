"""Model files: locating and validating a bundle, the manifest of upstream sources,
downloading and installing them, and choosing which model a run uses.

Import the submodules directly (`kwsd.model.bundle`, `kwsd.model.resolve`, ...): this
package stays import-free so that opening a bundle never pulls in the download stack.
"""
