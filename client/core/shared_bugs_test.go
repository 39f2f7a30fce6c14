package core

import (
	"reflect"
	"testing"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// TestSharedDecoderAcceptsPortalDecoders shows a bug in shared code (internal/tunnel, for the lead to fix):
// tunnel.DriverConfig documents Decode as "portalapi.DecodeClientIngress or portalapi.DecodeGatewayIngress",
// but tunnel.Decoder is func(string, []byte) while those take json.RawMessage, so neither can be assigned
// (`Decode: portalapi.DecodeClientIngress` does not compile; every daemon needs a wrapper, as
// driver_test.go has). Fix: declare Decoder with json.RawMessage (or make the portalapi decoders take
// []byte).
func TestSharedDecoderAcceptsPortalDecoders(t *testing.T) {
	decoder := reflect.TypeFor[tunnel.Decoder]()
	for name, f := range map[string]any{
		"DecodeClientIngress":  portalapi.DecodeClientIngress,
		"DecodeGatewayIngress": portalapi.DecodeGatewayIngress,
	} {
		if !reflect.TypeOf(f).AssignableTo(decoder) {
			t.Errorf("portalapi.%s (%v) is not assignable to tunnel.Decoder (%v)", name, reflect.TypeOf(f), decoder)
		}
	}
}
