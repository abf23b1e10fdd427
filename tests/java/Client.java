// One call with Java's own HttpClient at the provider's default URL, with
// the JVM's default trust store: no setting of any kind.
// Usage: java Client.java
// Prints "ok <body>" and exits 0, or the error and exits 1.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class Client {
    public static void main(String[] args) {
        try {
            HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
            HttpRequest req = HttpRequest.newBuilder(URI.create("https://api.openai.com/v1/chat/completions"))
                .header("content-type", "application/json")
                .header("authorization", "Bearer sk-test")
                .timeout(Duration.ofSeconds(15))
                .POST(HttpRequest.BodyPublishers.ofString(
                    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}]}"))
                .build();
            HttpResponse<String> resp = client.send(req, HttpResponse.BodyHandlers.ofString());
            System.out.println("ok " + resp.statusCode() + " " + resp.body());
        } catch (Exception e) {
            System.out.println("error " + e);
            System.exit(1);
        }
    }
}
