package deploy

import (
	"context"
	"fmt"

	modal "github.com/modal-labs/modal-client/go"
)

// Autoscaler changes a deployed Server's autoscaler. A later `modal deploy`
// resets it to the values in the app.
type Autoscaler interface {
	SetMinContainers(ctx context.Context, environment, app, server string, min int) error
}

// ModalAutoscaler is Autoscaler through Modal's Go SDK. Credentials come
// from MODAL_TOKEN_ID and MODAL_TOKEN_SECRET or ~/.modal.toml.
type ModalAutoscaler struct {
	client *modal.Client
}

// NewModalAutoscaler connects to Modal.
func NewModalAutoscaler() (*ModalAutoscaler, error) {
	c, err := modal.NewClient()
	if err != nil {
		return nil, fmt.Errorf("modal client: %w", err)
	}
	return &ModalAutoscaler{client: c}, nil
}

// Close releases the connection.
func (m *ModalAutoscaler) Close() { m.client.Close() }

// SetMinContainers updates the deployed Server's autoscaler. A Modal
// Server is a function named after its class (py/modal/app.py, App.server:
// name defaults to the class name, modal-client 1.5.4 at 69519ae), so the
// Go SDK finds it with Functions.FromName, and UpdateAutoscaler exists only
// on a Function (go/function.go at the same commit).
func (m *ModalAutoscaler) SetMinContainers(ctx context.Context, environment, app, server string, min int) error {
	fn, err := m.client.Functions.FromName(ctx, app, server, &modal.FunctionFromNameParams{Environment: environment})
	if err != nil {
		return fmt.Errorf("find %s.%s: %w", app, server, err)
	}
	n := uint32(min)
	if _, err := fn.UpdateAutoscaler(ctx, &modal.FunctionUpdateAutoscalerParams{MinContainers: &n}); err != nil {
		return fmt.Errorf("update the autoscaler of %s.%s: %w", app, server, err)
	}
	return nil
}
