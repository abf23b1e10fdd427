// A Go client with its default settings (crypto/x509 verification against
// the system roots, HTTP/2 by ALPN) calling the provider's default URL:
// what an unmodified Go application does. Exit 0 on a 200 answer.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	req, err := http.NewRequest("POST", "https://api.openai.com/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer sk-test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		fmt.Fprintln(os.Stderr, resp.Status, string(answer))
		os.Exit(1)
	}
	fmt.Println(string(answer))
}
