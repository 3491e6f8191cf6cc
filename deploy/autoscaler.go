package deploy

import (
	"context"
	"fmt"

	modal "github.com/modal-labs/modal-client/go"
)

// Autoscaler changes a deployed class's autoscaler. A later `modal deploy`
// resets it to the values in the app.
type Autoscaler interface {
	SetMinContainers(ctx context.Context, environment, app, class string, min int) error
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

// SetMinContainers updates the class's autoscaler through one of its
// methods: the SDK reaches a class's autoscaler only through a method's
// function, which for a class without parameters is the class's own
// service function (the generated app has engine_status for this).
func (m *ModalAutoscaler) SetMinContainers(ctx context.Context, environment, app, class string, min int) error {
	cls, err := m.client.Cls.FromName(ctx, app, class, &modal.ClsFromNameParams{Environment: environment})
	if err != nil {
		return fmt.Errorf("find %s.%s: %w", app, class, err)
	}
	inst, err := cls.Instance(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s.%s: %w", app, class, err)
	}
	fn, err := inst.Method("engine_status")
	if err != nil {
		return fmt.Errorf("%s.%s: %w", app, class, err)
	}
	n := uint32(min)
	if _, err := fn.UpdateAutoscaler(ctx, &modal.FunctionUpdateAutoscalerParams{MinContainers: &n}); err != nil {
		return fmt.Errorf("update the autoscaler of %s.%s: %w", app, class, err)
	}
	return nil
}
