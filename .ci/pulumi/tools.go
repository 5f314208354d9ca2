//go:build tools

// Package tools records the commands this module builds, so go.mod and go.sum pin their
// dependencies.
package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
)
