// Package depcheck holds the test of the project's import rule: a package
// imports no other package of the project, except its own subpackages;
// cmd/ wires them together (and hack/ and integration/, which build and
// test the whole, may use any; so may external test packages, which hold a
// package to its contract with a consumer). The consumer declares the small interface
// it needs, and cmd passes it the concrete type.
package depcheck
